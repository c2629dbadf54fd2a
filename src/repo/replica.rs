//! An edge's copy of the image repository: root versions, targets, snapshot and
//! timestamp exactly as the origin signed them, arriving through the change feed (they
//! are replicated records under `tuf/`). An edge holds no repository key, so it can
//! serve, withhold or delay this metadata but never change it undetected; it signs
//! only its own director answers, with a key the root authorises.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use super::keys::KeyPair;
use super::publish::{versioned_key, Published, Roots};
use super::root::verify_chain;
use super::{Repo, RepoError, Ttls};
use crate::store::{Cf, Store};

impl Repo {
    /// Opens the replicated repository; fails if no root has been replicated yet.
    pub fn open_replica(
        store: Arc<Store>,
        director_key: &Path,
        ttls: Ttls,
    ) -> Result<Repo, RepoError> {
        let director = Arc::new(KeyPair::load(director_key)?);
        let roots = stored_roots(&store)?
            .ok_or_else(|| RepoError::Invalid("no root has been replicated yet".into()))?;
        let repo = Repo {
            store,
            roots: RwLock::new(Arc::new(roots)),
            keys: None,
            director,
            ttls,
            current: RwLock::new(Arc::new(Published::default())),
            writes: Mutex::new(()),
        };
        repo.load_stored()?;
        if !repo.director_authorised() {
            tracing::warn!(
                key = &repo.director.id()[..16],
                "this edge's director key is not authorised by the replicated root: devices will refuse its answers (run `update-edge keys add-edge` on the origin)"
            );
        }
        Ok(repo)
    }

    /// Re-reads the replicated metadata after a page of the feed was applied.
    pub fn reload(&self) -> Result<(), RepoError> {
        if let Some(r) = stored_roots(&self.store)? {
            *self.roots.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(r);
        }
        self.load_stored()
    }

    /// Whether the newest root authorises the key this node signs answers with.
    pub fn director_authorised(&self) -> bool {
        self.director_ids()
            .iter()
            .any(|id| id == self.director.id())
    }

    /// True on an edge (no signing keys: metadata comes from upstream).
    pub fn is_replica(&self) -> bool {
        self.keys.is_none()
    }
}

/// The replicated root chain, verified version by version (None before the first).
fn stored_roots(store: &Store) -> Result<Option<Roots>, RepoError> {
    let mut files = Vec::new();
    for n in 1u64.. {
        match store.kv().get(Cf::Meta, &versioned_key("root", n))? {
            Some(b) => files.push((format!("replicated root version {n}"), b)),
            None => break,
        }
    }
    let chain = verify_chain(files)?;
    Ok(chain.last().map(|(last, _)| Roots {
        root: last.signed.clone(),
        files: chain.iter().map(|(_, b)| b.clone().into()).collect(),
    }))
}
