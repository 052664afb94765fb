//! Maps a predecessor left pinned: reused when they have the shape this binary's programs expect,
//! replaced when not (an upgrade that changed a record, or a new `EBPF_MAP_SIZE`).
//!
//! Replacing is safe for callers: removing a map's pin only drops its name. The predecessor's
//! programs, still attached through their pinned links, keep their maps and keep redirecting until
//! our links are pinned over theirs, so there is no moment without a redirect.

use std::path::Path;

use aya::maps::{MapData, MapType};
use aya_obj::generated::bpf_map_type;
use metadataproxy_common::maps;

use super::EbpfError;

/// The shape of one map: what the kernel reports for a pinned map, or what the object declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Maps whose size follows `EBPF_MAP_SIZE` (the others keep the size the object declares).
const SIZED: [&str; 3] = [maps::CONN4, maps::CONN6, maps::EXEMPT];

/// Mode of the pin directory: only its owner (the daemon's user) may look inside. A pinned map
/// opened by anyone else could rewrite the redirect target, exempt a cgroup or forge a caller's
/// record.
pub const DIR_MODE: u32 = 0o700;

/// Creates the pin directory with [`DIR_MODE`], or narrows an existing one to it (the mode a
/// predecessor or an administrator left may be wider). Fails when it cannot: fail closed.
pub fn prepare_dir(dir: &Path) -> Result<(), EbpfError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let io = |source| EbpfError::Io {
        path: dir.to_owned(),
        source,
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io)?;
    }
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(io)?;
        tracing::info!(dir = %dir.display(), was = format!("{mode:o}"), "pin directory narrowed to 0700");
    }
    Ok(())
}

/// Removes the pins of maps named like ours (`MP_*`) that `expected` does not list: an older
/// version's, whose programs are detached. Returns their names.
pub fn remove_unknown_maps(dir: &Path, expected: &[(String, Shape)]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("MP_") && !expected.iter().any(|(n, _)| n == name))
        .filter(|name| std::fs::remove_file(dir.join(name)).is_ok())
        .collect()
}

/// The shape of every map of `object`, with the sized ones at `map_size` entries.
pub fn expected(object: &[u8], map_size: u32) -> Result<Vec<(String, Shape)>, EbpfError> {
    let parsed = aya_obj::Object::parse(object)
        .map_err(|e| EbpfError::Object(format!("cannot parse the eBPF object: {e}")))?;
    let mut shapes: Vec<(String, Shape)> = parsed
        .maps
        .iter()
        .filter(|(name, _)| name.starts_with("MP_"))
        .map(|(name, map)| {
            let max_entries = if SIZED.contains(&name.as_str()) {
                map_size
            } else {
                map.max_entries()
            };
            (
                name.clone(),
                Shape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries,
                },
            )
        })
        .collect();
    shapes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(shapes)
}

/// Why a pinned map of shape `pinned` cannot serve where `wanted` is expected; `None` if it can.
pub fn mismatch(wanted: Shape, pinned: Shape) -> Option<String> {
    let mut why = Vec::new();
    if wanted.map_type != pinned.map_type {
        why.push(format!(
            "map type {} (want {})",
            pinned.map_type, wanted.map_type
        ));
    }
    if wanted.key_size != pinned.key_size {
        why.push(format!(
            "key size {} (want {})",
            pinned.key_size, wanted.key_size
        ));
    }
    if wanted.value_size != pinned.value_size {
        why.push(format!(
            "value size {} (want {}: the record layout changed)",
            pinned.value_size, wanted.value_size
        ));
    }
    if wanted.max_entries != pinned.max_entries {
        why.push(format!(
            "{} entries (want {}: EBPF_MAP_SIZE changed)",
            pinned.max_entries, wanted.max_entries
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// The shape of the map pinned at `path`; `None` when nothing is pinned there.
fn pinned_shape(path: &Path) -> Result<Option<Shape>, EbpfError> {
    if !path.exists() {
        return Ok(None);
    }
    let name = "pinned map";
    let err = |source| EbpfError::Map { name, source };
    let data = MapData::from_pin(path).map_err(err)?;
    let info = data.info().map_err(err)?;
    let map_type = info.map_type().map_err(err)?;
    Ok(Some(Shape {
        map_type: raw_type(map_type),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }))
}

/// The `bpf_map_type` number of an aya map type (aya's enum cannot be cast outside its crate).
fn raw_type(map_type: MapType) -> u32 {
    (0..bpf_map_type::__MAX_BPF_MAP_TYPE as u32)
        .find(|n| {
            bpf_map_type::try_from(*n)
                .ok()
                .and_then(|t| MapType::try_from(t).ok())
                == Some(map_type)
        })
        .unwrap_or(u32::MAX)
}

/// Removes the pin of every map in `dir` whose shape is not the expected one, so the loader
/// creates it afresh; returns `(map, reason)` for each one replaced.
pub fn retire_mismatched(
    dir: &Path,
    expected: &[(String, Shape)],
) -> Result<Vec<(String, String)>, EbpfError> {
    let mut retired = Vec::new();
    for (name, wanted) in expected {
        let path = dir.join(name);
        let Some(pinned) = pinned_shape(&path)? else {
            continue;
        };
        if let Some(reason) = mismatch(*wanted, pinned) {
            std::fs::remove_file(&path).map_err(|source| EbpfError::Io {
                path: path.clone(),
                source,
            })?;
            retired.push((name.clone(), reason));
        }
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LRU: u32 = 9;

    fn shape(value_size: u32, max_entries: u32) -> Shape {
        Shape {
            map_type: LRU,
            key_size: 8,
            value_size,
            max_entries,
        }
    }

    #[test]
    fn the_same_shape_is_reused() {
        assert_eq!(mismatch(shape(40, 65_536), shape(40, 65_536)), None);
    }

    #[test]
    fn a_changed_record_or_map_size_is_named() {
        let why = mismatch(shape(48, 65_536), shape(40, 65_536)).expect("mismatch");
        assert!(why.contains("value size 40 (want 48"), "{why}");
        let why = mismatch(shape(40, 1_024), shape(40, 65_536)).expect("mismatch");
        assert!(why.contains("65536 entries (want 1024"), "{why}");
        let other = Shape {
            map_type: 1,
            ..shape(40, 65_536)
        };
        assert!(mismatch(shape(40, 65_536), other).is_some());
    }

    #[test]
    fn the_pin_directory_is_made_or_narrowed_to_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/pins");
        prepare_dir(&dir).unwrap();
        let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), DIR_MODE);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE, "a wider mode is narrowed");
    }

    #[test]
    fn pins_of_maps_no_longer_declared_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["MP_BY_COOKIE", "MP_CONN4", "link-mp_connect4-1", "other"] {
            std::fs::write(tmp.path().join(name), b"").unwrap();
        }
        let expected = vec![("MP_CONN4".to_owned(), shape(40, 64))];
        assert_eq!(remove_unknown_maps(tmp.path(), &expected), ["MP_BY_COOKIE"]);
        assert!(tmp.path().join("MP_CONN4").exists());
        assert!(tmp.path().join("link-mp_connect4-1").exists());
        assert!(tmp.path().join("other").exists());
    }

    #[test]
    fn aya_map_types_map_back_to_their_numbers() {
        assert_eq!(raw_type(MapType::LruHash), LRU);
        assert_eq!(raw_type(MapType::Hash), 1);
        assert_eq!(raw_type(MapType::Array), 2);
    }
}
