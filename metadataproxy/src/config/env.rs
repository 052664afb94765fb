//! Where raw setting values come from: the command line first, then the environment.

use std::collections::HashMap;
use std::ffi::OsString;

/// A source of environment variables, so tests inject a map instead of mutating the process.
pub trait Env {
    /// The variable's value; `Err` carries the raw value when it is not valid UTF-8.
    fn var(&self, name: &str) -> Option<Result<String, OsString>>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<Result<String, OsString>> {
        std::env::var_os(name).map(OsString::into_string)
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<Result<String, OsString>> {
        self.get(name).cloned().map(Ok)
    }
}

impl<S: std::hash::BuildHasher> Env for HashMap<&str, &str, S> {
    fn var(&self, name: &str) -> Option<Result<String, OsString>> {
        self.get(name).map(|v| Ok((*v).to_owned()))
    }
}
