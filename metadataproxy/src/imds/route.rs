//! The `route` label of the request metrics: which route of the metadata API a request took.

use super::path::Category;
use crate::metrics::Route;

/// The route of a parsed request; `None`: the path was refused before routing.
pub fn of(category: Option<&Category<'_>>) -> Route {
    match category {
        None => Route::BadPath,
        Some(Category::Token) => Route::Token,
        Some(Category::IamCredentials(_)) => Route::IamCredentials,
        Some(Category::IamInfo) => Route::IamInfo,
        Some(Category::IamListing | Category::IamCredentialsList) => Route::IamListing,
        Some(Category::IamOther | Category::HostIdentityCredentials) => Route::IamRefused,
        Some(Category::Root | Category::VersionRoot | Category::Other) => Route::Metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imds::path;

    /// The route label of a raw request path.
    fn route(raw_path: &str) -> &'static str {
        let category = path::parse(raw_path).ok().map(|p| path::classify(&p));
        of(category.as_ref()).label()
    }

    #[test]
    fn routes_by_category() {
        for (path, want) in [
            ("/latest/api/token", "token"),
            (
                "/latest/meta-data/iam/security-credentials/web",
                "iam_credentials",
            ),
            ("/latest/meta-data/iam/security-credentials/", "iam_listing"),
            ("/latest/meta-data/iam/", "iam_listing"),
            ("/latest/meta-data/iam/info", "iam_info"),
            ("/latest/meta-data/IAM/whatever", "iam_refused"),
            (
                "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
                "iam_refused",
            ),
            ("/latest/meta-data/instance-id", "metadata"),
            ("/", "metadata"),
            ("/latest/meta-data/iam/../iam/info", "bad_path"),
            ("/latest/%2e%2e/", "bad_path"),
        ] {
            assert_eq!(route(path), want, "{path}");
        }
    }
}
