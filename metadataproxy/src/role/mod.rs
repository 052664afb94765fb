//! Roles: parsing role strings and ARNs, account aliases, static resolution, session names, and
//! the role assignment a caller is entitled to, and the session tags sent with it.

mod account_map;
mod arn;
mod assignment;
mod names;
mod resolve;
mod session;
mod spec;
mod tags;

pub(crate) use account_map::json_type;
pub use account_map::{AccountMap, AccountMapError, BadAccountEntry};
pub use arn::{Partition, RoleArn, RoleArnError};
pub use assignment::{
    AssignmentError, ExternalIdError, MAX_EXTERNAL_ID_LEN, MIN_EXTERNAL_ID_LEN, RoleAssignment,
    Session, validate_external_id,
};
pub use names::{IamNameError, MAX_NAME_LEN, MAX_PATH_LEN};
pub use resolve::{ResolveError, Resolved, resolve};
pub use session::{MAX_SESSION_NAME_LEN, MIN_SESSION_NAME_LEN, SessionKey, SessionName};
pub use spec::{AccountRef, RoleSpec, RoleSpecError};
pub use tags::{
    NAMESPACE_LABEL, POD_NAME_LABEL, POD_UID_LABEL, SessionContext, TagSpec, TagsConfig, TagsError,
    WorkloadFacts, WorkloadField, source_identity, tag_value,
};
