//! `GET /v1/tuf/...`: the TUF image repository as standard clients fetch it —
//! `{N}.root.json`, `timestamp.json`, `{N}.snapshot.json`, `{N}.targets.json` (plus the
//! unversioned latest of each, for convenience), and target files at
//! `targets/{dir}/{SHA256}.{base}` (the consistent-snapshot form clients build from a
//! target name `{dir}/{base}`) or `targets/{SHA256}.{name}`, mapped onto the stored
//! blob with the same range, conditional and caching semantics as `/v1/blobs`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use super::blobs::serve_blob;
use super::error::ApiError;
use super::AppState;

/// Versioned metadata never changes: cache it like content-addressed blobs.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// timestamp.json and unversioned names must be revalidated on every use.
const CACHE_REVALIDATE: &str = "no-cache";

/// What a metadata file name asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum MetaFile {
    Root(Option<u64>),
    Timestamp,
    Snapshot(Option<u64>),
    Targets(Option<u64>),
}

/// Parses `timestamp.json`, `{N}.root.json`, `root.json`, and the same for snapshot
/// and targets. Pure, so it is tested on its edge cases.
pub fn parse_meta_file(file: &str) -> Option<MetaFile> {
    let stem = file.strip_suffix(".json")?;
    let (version, role) = match stem.split_once('.') {
        Some((n, role)) => {
            if n.is_empty() || n.len() > 19 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (Some(n.parse::<u64>().ok().filter(|v| *v >= 1)?), role)
        }
        None => (None, stem),
    };
    match role {
        "root" => Some(MetaFile::Root(version)),
        "timestamp" if version.is_none() => Some(MetaFile::Timestamp),
        "snapshot" => Some(MetaFile::Snapshot(version)),
        "targets" => Some(MetaFile::Targets(version)),
        _ => None,
    }
}

/// Splits a consistent-snapshot target path into (sha256 hex, target name).
pub fn split_target_path(path: &str) -> Option<(String, String)> {
    fn hashed(s: &str) -> Option<(&str, &str)> {
        let (h, rest) = s.split_at_checked(64)?;
        let rest = rest.strip_prefix('.')?;
        (h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && !rest.is_empty())
        .then_some((h, rest))
    }
    let (dir, base) = match path.rsplit_once('/') {
        Some((d, b)) => (Some(d), b),
        None => (None, path),
    };
    if let Some((h, b)) = hashed(base) {
        let name = match dir {
            Some(d) if !d.is_empty() => format!("{d}/{b}"),
            _ => b.to_string(),
        };
        return Some((h.to_string(), name));
    }
    hashed(path).map(|(h, n)| (h.to_string(), n.to_string()))
}

fn json(bytes: Bytes, cache: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, cache),
        ],
        bytes,
    )
        .into_response()
}

pub async fn get_metadata(
    State(s): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::NotFound(format!("no TUF metadata {file:?}"));
    let repo = &s.repo;
    let versioned = |role: &'static str, v: Option<u64>| {
        let repo = repo.clone();
        async move {
            let (n, cache) = match v {
                Some(n) => (n, CACHE_IMMUTABLE),
                None => (repo.current_version(role), CACHE_REVALIDATE),
            };
            let got = tokio::task::spawn_blocking(move || repo.versioned(role, n))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            Ok::<_, ApiError>(got.map(|b| json(b, cache)))
        }
    };
    let resp = match parse_meta_file(&file).ok_or_else(missing)? {
        MetaFile::Timestamp => Some(json(repo.timestamp(), CACHE_REVALIDATE)),
        MetaFile::Root(Some(n)) => repo.root_file(n).map(|b| json(b, CACHE_IMMUTABLE)),
        MetaFile::Root(None) => Some(json(repo.latest_root(), CACHE_REVALIDATE)),
        MetaFile::Snapshot(v) => versioned("snapshot", v).await?,
        MetaFile::Targets(v) => versioned("targets", v).await?,
    };
    resp.ok_or_else(missing)
}

pub async fn get_target(
    State(s): State<AppState>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::NotFound(format!("no TUF target {path:?}"));
    let (hash, name) = split_target_path(&path).ok_or_else(missing)?;
    let target = s.repo.target(&name).ok_or_else(missing)?;
    if hex::encode(target.sha256) != hash {
        return Err(missing());
    }
    serve_blob(s, method, target.blob, headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_parse_and_odd_ones_are_refused() {
        assert_eq!(parse_meta_file("timestamp.json"), Some(MetaFile::Timestamp));
        assert_eq!(
            parse_meta_file("3.root.json"),
            Some(MetaFile::Root(Some(3)))
        );
        assert_eq!(parse_meta_file("root.json"), Some(MetaFile::Root(None)));
        assert_eq!(
            parse_meta_file("12.targets.json"),
            Some(MetaFile::Targets(Some(12)))
        );
        assert_eq!(
            parse_meta_file("snapshot.json"),
            Some(MetaFile::Snapshot(None))
        );
        for bad in [
            "0.root.json",
            "1.timestamp.json",
            "x.root.json",
            "1.mirrors.json",
            "root",
            "-1.root.json",
            "99999999999999999999.root.json",
        ] {
            assert_eq!(parse_meta_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn target_paths_split_into_hash_and_name() {
        let h = "ab".repeat(32);
        assert_eq!(
            split_target_path(&format!("demo/1.0.2/{h}.os")),
            Some((h.clone(), "demo/1.0.2/os".into()))
        );
        assert_eq!(
            split_target_path(&format!("{h}.file.bin")),
            Some((h.clone(), "file.bin".into()))
        );
        assert_eq!(
            split_target_path(&format!("{h}.demo/1.0.2/os")),
            Some((h.clone(), "demo/1.0.2/os".into()))
        );
        assert_eq!(split_target_path("demo/1.0.2/os"), None);
        assert_eq!(
            split_target_path(&format!("demo/{}.os", "AB".repeat(32))),
            None
        );
        assert_eq!(split_target_path(&format!("{h}.")), None);
    }
}
