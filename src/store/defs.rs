//! Definitions file: a small key -> value map rewritten atomically
//! (write temp, fsync, rename, fsync directory).
//!
//! Format: `QGDEFS01` | count u32 | (key_len u32, key, value_len u32, value)* | crc32c u32
//! of everything before it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;

const MAGIC: &[u8; 8] = b"QGDEFS01";
pub(crate) const FILE: &str = "definitions";
pub(crate) const TMP: &str = "definitions.tmp";

pub(crate) fn encode(defs: &BTreeMap<String, Bytes>) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(defs.len() as u32).to_le_bytes());
    for (k, v) in defs {
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(v);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub(crate) fn decode(buf: &[u8]) -> Option<BTreeMap<String, Bytes>> {
    if buf.len() < MAGIC.len() + 8 || &buf[..8] != MAGIC {
        return None;
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut pos = 8;
    let take = |pos: &mut usize, n: usize| -> Option<&[u8]> {
        let s = body.get(*pos..*pos + n)?;
        *pos += n;
        Some(s)
    };
    let count = u32::from_le_bytes(take(&mut pos, 4)?.try_into().ok()?);
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let kl = u32::from_le_bytes(take(&mut pos, 4)?.try_into().ok()?) as usize;
        let k = String::from_utf8(take(&mut pos, kl)?.to_vec()).ok()?;
        let vl = u32::from_le_bytes(take(&mut pos, 4)?.try_into().ok()?) as usize;
        let v = Bytes::copy_from_slice(take(&mut pos, vl)?);
        out.insert(k, v);
    }
    (pos == body.len()).then_some(out)
}

/// Loads the definitions; a missing file is an empty map, a corrupt one is logged and
/// treated as empty (the store never refuses to start).
pub(crate) fn load(dir: &Path) -> BTreeMap<String, Bytes> {
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(buf) => decode(&buf).unwrap_or_else(|| {
            tracing::error!(file = %path.display(), "definitions file is corrupt; starting without definitions");
            BTreeMap::new()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot read definitions file");
            BTreeMap::new()
        }
    }
}

/// Atomically replaces the definitions file.
pub(crate) fn save(dir: &Path, defs: &BTreeMap<String, Bytes>, sync: bool) -> io::Result<()> {
    let tmp = dir.join(TMP);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(defs))?;
        if sync {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, dir.join(FILE))?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory so that creations, renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut m = BTreeMap::new();
        m.insert("q/a".to_string(), Bytes::from_static(b"\x00\x01xyz"));
        m.insert("x/b".to_string(), Bytes::new());
        let enc = encode(&m);
        assert_eq!(decode(&enc).unwrap(), m);
        let mut bad = enc.clone();
        bad[12] ^= 1;
        assert!(decode(&bad).is_none());
        assert!(decode(&enc[..enc.len() - 1]).is_none());
    }
}
