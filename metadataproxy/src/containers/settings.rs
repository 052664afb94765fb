//! A container's own settings: which role it asked for, with which external id and session name.
//!
//! The role comes from the environment variable `IAM_ROLE` (Lyft's), else from the label
//! [`ROLE_LABEL`]. The external id is read from the same place as the role: `IAM_EXTERNAL_ID` with
//! `IAM_ROLE`, the label [`EXTERNAL_ID_LABEL`] with the role label — so an image's variable cannot
//! attach an external id to a role given by a label, or the reverse. When both the variable and the
//! label name a role, the variable wins (Lyft compatibility) and a warning is logged. An empty
//! `IAM_ROLE=` counts as unset, as in Lyft. `ROLE_SESSION_KEY` (`Env:KEY` or `Labels:KEY`) names
//! where the session name comes from; its value is sanitised, and one too short to use leaves the
//! default session name.
//!
//! A container of a Kubernetes pod (containerd's CRI containers) that names no role of its own
//! takes its pod's annotation [`POD_ROLE_ANNOTATION`] (kube2iam's convention), with the external id
//! of [`POD_EXTERNAL_ID_ANNOTATION`].

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use crate::creds::Secret;
use crate::identity::Answer;
use crate::role::SessionKey;
use crate::role::{
    ExternalIdError, RoleAssignment, RoleSpec, RoleSpecError, Session, SessionContext, SessionName,
};

/// The container variable naming its role (Lyft's).
pub const ROLE_ENV: &str = "IAM_ROLE";
/// The container variable giving the external id for [`ROLE_ENV`]'s role (Lyft's).
pub const EXTERNAL_ID_ENV: &str = "IAM_EXTERNAL_ID";
/// The container label naming its role when `IAM_ROLE` is not set.
pub const ROLE_LABEL: &str = "metadataproxy.role";
/// The container label giving the external id for [`ROLE_LABEL`]'s role.
pub const EXTERNAL_ID_LABEL: &str = "metadataproxy.external-id";
/// The container variable its SDK sends as `Authorization` to the container-credentials endpoint.
pub const AUTHORIZATION_TOKEN_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// The container variable naming a file (inside the container) its SDK reads that token from;
/// it wins over [`AUTHORIZATION_TOKEN_ENV`], as in the SDKs.
pub const AUTHORIZATION_TOKEN_FILE_ENV: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";

/// The pod annotation naming the role of a pod's containers (kube2iam's convention).
pub const POD_ROLE_ANNOTATION: &str = "iam.amazonaws.com/role";
/// The pod annotation giving the external id for [`POD_ROLE_ANNOTATION`]'s role.
pub const POD_EXTERNAL_ID_ANNOTATION: &str = "iam.amazonaws.com/external-id";

/// Why a container's settings give it no credentials at all (not even `DEFAULT_ROLE`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    /// An environment entry that is only a name, like a bare `IAM_ROLE` (Lyft answered 500).
    #[error("environment entry `{0}` has no `=` and no value")]
    BareEnv(&'static str),
    /// The role string does not parse.
    #[error("{origin}: {source}")]
    Role {
        /// `IAM_ROLE` or the label's name.
        origin: &'static str,
        /// What is wrong with it.
        source: RoleSpecError,
    },
    /// The external id is not one STS accepts (the id itself is never printed).
    #[error("{origin}: {source}")]
    ExternalId {
        /// `IAM_EXTERNAL_ID` or the label's name.
        origin: &'static str,
        /// What is wrong with it.
        source: ExternalIdError,
    },
}

/// What a container is entitled to, decided once when it is indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRole {
    /// Its own role.
    Role(Arc<RoleAssignment>),
    /// It names no role: `DEFAULT_ROLE`, with its session name if `ROLE_SESSION_KEY` gave one
    /// (and its session tags and source identity, if configured).
    Default(Session),
    /// Its settings are malformed: no credentials (404), other containers are unaffected.
    Invalid(SettingsError),
}

impl ContainerRole {
    /// This role with the workload's session tags and source identity.
    #[must_use]
    pub fn with_context(self, context: Option<Arc<SessionContext>>) -> Self {
        if context.is_none() {
            return self;
        }
        match self {
            Self::Role(a) => Self::Role(Arc::new(RoleAssignment::clone(&a).with_context(context))),
            Self::Default(session) => Self::Default(Session { context, ..session }),
            Self::Invalid(e) => Self::Invalid(e),
        }
    }

    /// What the identification chain makes of it.
    pub fn answer(&self) -> Answer {
        match self {
            Self::Role(a) => Answer::Role(Arc::clone(a)),
            Self::Default(session) => Answer::DefaultRole(session.clone()),
            Self::Invalid(_) => Answer::Refused,
        }
    }
}

/// A container's variables, `KEY=VALUE` as Docker reports them; a bare `KEY` is kept as such.
#[derive(Debug, Default)]
struct EnvView<'a> {
    values: HashMap<&'a str, Option<&'a str>>,
}

impl<'a> EnvView<'a> {
    fn new(entries: &'a [String]) -> Self {
        // Docker keeps the last of repeated names, so do we.
        let values = entries
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (e.as_str(), None),
            })
            .collect();
        Self { values }
    }

    /// The value of `name`: `Ok(None)` when unset or empty, `Err` when bare.
    fn get(&self, name: &'static str) -> Result<Option<&'a str>, SettingsError> {
        match self.values.get(name) {
            None => Ok(None),
            Some(None) => Err(SettingsError::BareEnv(name)),
            Some(Some(v)) => Ok(Some(*v).filter(|v| !v.is_empty())),
        }
    }

    /// The value of `name` for information only (a session name): bare or empty is unset.
    fn lenient(&self, name: &str) -> Option<&'a str> {
        self.values.get(name).copied().flatten()
    }
}

/// The role and related settings of one container of a pod with annotations `pod` (empty for a
/// container outside Kubernetes): the container's own role first, else the pod's.
pub fn container_role_in_pod(
    env: &[String],
    labels: &HashMap<String, String>,
    pod: &HashMap<String, String>,
    session_key: Option<&SessionKey>,
) -> ContainerRole {
    match try_container_role(env, labels, pod, session_key) {
        Ok(role) => role,
        Err(e) => ContainerRole::Invalid(e),
    }
}

/// What a container's calls to the container-credentials endpoint must present, as its
/// environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Neither variable is set.
    Unset,
    /// [`AUTHORIZATION_TOKEN_ENV`].
    Token(Secret),
    /// [`AUTHORIZATION_TOKEN_FILE_ENV`]: the file's path inside the container, read per request.
    File(String),
}

/// The container's [`AUTHORIZATION_TOKEN_FILE_ENV`], else its [`AUTHORIZATION_TOKEN_ENV`] (the
/// last of each, as Docker keeps them); an empty or bare variable is unset.
pub fn authorization(env: &[String]) -> Authorization {
    let env = EnvView::new(env);
    let set = |name| env.lenient(name).filter(|v| !v.is_empty());
    if let Some(path) = set(AUTHORIZATION_TOKEN_FILE_ENV) {
        Authorization::File(path.to_owned())
    } else if let Some(token) = set(AUTHORIZATION_TOKEN_ENV) {
        Authorization::Token(Secret::new(token.to_owned()))
    } else {
        Authorization::Unset
    }
}

/// Whether the container names a role both by `IAM_ROLE` and by label, differently.
pub fn label_shadowed(env: &[String], labels: &HashMap<String, String>) -> bool {
    let env_role = EnvView::new(env).get(ROLE_ENV).ok().flatten();
    let label_role = labels.get(ROLE_LABEL).filter(|v| !v.is_empty());
    matches!((env_role, label_role), (Some(e), Some(l)) if e.trim() != l.trim())
}

fn try_container_role(
    env: &[String],
    labels: &HashMap<String, String>,
    pod: &HashMap<String, String>,
    session_key: Option<&SessionKey>,
) -> Result<ContainerRole, SettingsError> {
    let env = EnvView::new(env);
    let label = |name: &str| {
        labels
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let annotation = |name: &str| pod.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let session = session_key
        .and_then(|key| match key {
            SessionKey::Env(name) => env.lenient(name),
            SessionKey::Label(name) => label(name),
        })
        .and_then(SessionName::sanitize);
    let env_role = env.get(ROLE_ENV)?;
    let env_external_id = env.get(EXTERNAL_ID_ENV)?;
    let (role, external_id, origin, id_origin) = if let Some(role) = env_role {
        (role, env_external_id, ROLE_ENV, EXTERNAL_ID_ENV)
    } else if let Some(role) = label(ROLE_LABEL) {
        (
            role,
            label(EXTERNAL_ID_LABEL),
            ROLE_LABEL,
            EXTERNAL_ID_LABEL,
        )
    } else if let Some(role) = annotation(POD_ROLE_ANNOTATION) {
        (
            role,
            annotation(POD_EXTERNAL_ID_ANNOTATION),
            POD_ROLE_ANNOTATION,
            POD_EXTERNAL_ID_ANNOTATION,
        )
    } else {
        return Ok(ContainerRole::Default(Session::named(session)));
    };
    let spec =
        RoleSpec::parse(role.trim()).map_err(|source| SettingsError::Role { origin, source })?;
    let external_id = external_id.map(|id| id.trim().to_owned());
    let assignment = RoleAssignment::new(spec, external_id, session).map_err(|source| {
        SettingsError::ExternalId {
            origin: id_origin,
            source,
        }
    })?;
    Ok(ContainerRole::Role(Arc::new(assignment)))
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
