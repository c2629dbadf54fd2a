//! What root.json says beyond the TUF spec, as devices read it: the director
//! authorisation carried in root's signed extra data (TUF clients reject unknown
//! top-level roles, so it cannot be a fifth role).

use serde_json::Value;
use tough::schema::Root;

/// Root's extra member authorising director keys: `{"keyids": [...], "threshold": 1}`.
pub const DIRECTOR_FIELD: &str = "x-update-edge-director";

/// Director key ids (hex) and threshold that `root` authorises.
pub fn director_keys(root: &Root) -> Result<(Vec<String>, u64), String> {
    let bad = |m: &str| format!("{DIRECTOR_FIELD}: {m}");
    let v = root
        ._extra
        .get(DIRECTOR_FIELD)
        .ok_or_else(|| bad("missing"))?;
    let ids = v["keyids"]
        .as_array()
        .ok_or_else(|| bad("no keyids"))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("keyid is not a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let threshold = v["threshold"]
        .as_u64()
        .filter(|t| *t >= 1)
        .ok_or_else(|| bad("bad threshold"))?;
    Ok((ids, threshold))
}

/// Parses `{"signed": {...}}` of any root file for its version (no verification).
pub fn version_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(bytes).ok()?["signed"]["version"].as_u64()
}
