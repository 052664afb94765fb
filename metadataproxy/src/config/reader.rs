//! Reading raw setting values (flag, else environment, else default) and collecting every error:
//! what each component's settings parser is given.

use std::fmt;

use clap::ArgMatches;

use super::Env;
use super::settings as s;

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment name of the setting.
    pub name: &'static str,
    /// The value as given.
    pub value: String,
    /// Why it is invalid.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.name, self.value, self.reason)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrors {
    /// The command line itself is malformed (or asks for `--help`/`--version`).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// One or more settings have invalid values; all of them are listed.
    #[error("invalid configuration:{}", list(.0))]
    Invalid(Vec<ConfigError>),
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .fold(String::new(), |acc, e| acc + "\n  " + &e.to_string())
}

/// Reads raw values (flag, else environment, else default) and records errors as it parses.
pub(super) struct Reader<'a> {
    matches: &'a ArgMatches,
    env: &'a dyn Env,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    /// A reader of the values in `matches` (the command line) and `env`.
    pub(super) fn new(matches: &'a ArgMatches, env: &'a dyn Env) -> Self {
        Self {
            matches,
            env,
            errors: Vec::new(),
        }
    }

    /// The errors recorded so far, taken.
    pub(super) fn take_errors(&mut self) -> Vec<ConfigError> {
        std::mem::take(&mut self.errors)
    }

    /// The raw value; `None` when unset and without a default.
    pub(super) fn raw(&mut self, name: &'static str) -> Option<String> {
        if let Some(v) = self.matches.get_one::<String>(name) {
            return Some(v.clone());
        }
        match self.env.var(name) {
            Some(Ok(v)) => Some(v),
            Some(Err(raw)) => {
                self.fail(name, &raw.to_string_lossy(), "not valid UTF-8");
                None
            }
            None => s::by_env(name).and_then(|d| d.default).map(str::to_owned),
        }
    }

    /// A value where the empty string means "use the default" (unset when there is none).
    pub(super) fn optional(&mut self, name: &'static str) -> Option<String> {
        match self.raw(name) {
            Some(v) if v.trim().is_empty() => {
                s::by_env(name).and_then(|d| d.default).map(str::to_owned)
            }
            other => other,
        }
    }

    /// Lyft's boolean rule.
    pub(super) fn boolean(&mut self, name: &'static str) -> bool {
        self.raw(name)
            .is_some_and(|v| !matches!(v.as_str(), "" | "False" | "false" | "0"))
    }

    /// Parses a present value with `f`, recording its error.
    pub(super) fn parse<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.optional(name)?;
        match f(value.trim()) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.fail(name, &value, &reason);
                None
            }
        }
    }

    /// Whether `name` was already reported invalid.
    pub(super) fn has_errors_for(&self, name: &str) -> bool {
        self.errors.iter().any(|e| e.name == name)
    }

    pub(super) fn fail(&mut self, name: &'static str, value: &str, reason: &str) {
        self.errors.push(ConfigError {
            name,
            value: value.to_owned(),
            reason: reason.to_owned(),
        });
    }
}
