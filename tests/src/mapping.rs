//! A `ROLE_MAPPING_FILE` in its own temporary directory, rewritten in place or by rename.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A mapping file that is removed (with its directory) when dropped.
#[derive(Debug)]
pub struct MappingFile {
    dir: TempDir,
    path: PathBuf,
}

impl MappingFile {
    /// A new file holding `mapping` (IP → role name or object).
    pub fn new(mapping: &serde_json::Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mapping-")
            .tempdir()
            .expect("temp dir for the mapping file");
        let path = dir.path().join("role-mapping.json");
        let file = Self { dir, path };
        file.write_raw(&mapping.to_string());
        file
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Overwrites the file in place (truncate and write).
    pub fn write(&self, mapping: &serde_json::Value) {
        self.write_raw(&mapping.to_string());
    }

    /// Overwrites the file in place with arbitrary text (e.g. broken JSON).
    pub fn write_raw(&self, text: &str) {
        std::fs::write(&self.path, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.path.display()));
    }

    /// Writes a sibling file and renames it over the mapping (how config management replaces it).
    pub fn replace(&self, mapping: &serde_json::Value) {
        let next = self.dir.path().join("role-mapping.json.next");
        std::fs::write(&next, mapping.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", next.display()));
        std::fs::rename(&next, &self.path)
            .unwrap_or_else(|e| panic!("renaming over {}: {e}", self.path.display()));
    }
}
