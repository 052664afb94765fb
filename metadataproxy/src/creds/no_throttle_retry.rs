//! Keeps the AWS SDK from retrying a throttled `sts:AssumeRole` on its own: the cache backs off
//! instead (1 s doubling to 60 s, with jitter), so every attempt that reaches STS is one the
//! budget (`STS_MAX_CALLS_PER_SECOND`) let through. Other failures (resets, 5xx, timeouts) are
//! still retried by the SDK's standard mode.

use aws_sdk_sts::error::ProvideErrorMetadata as _;
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};

/// The error codes AWS throttles with.
pub const THROTTLING_CODES: &[&str] =
    &["Throttling", "ThrottlingException", "RequestLimitExceeded"];

/// The retry classifier; see the module documentation.
#[derive(Debug, Default)]
pub struct NoRetryOnThrottling;

impl ClassifyRetry for NoRetryOnThrottling {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let code = error
            .as_operation_error()
            .and_then(|e| e.downcast_ref::<AssumeRoleError>())
            .and_then(|e| e.code());
        if code.is_some_and(|c| THROTTLING_CODES.contains(&c)) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "no SDK retry of a throttled AssumeRole"
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::client::interceptors::context::{Error, Input};
    use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn classify(code: &str) -> RetryAction {
        let mut ctx = InterceptorContext::new(Input::erase(()));
        let error = AssumeRoleError::generic(ErrorMetadata::builder().code(code).build());
        ctx.set_output_or_error(Err(OrchestratorError::operation(Error::erase(error))));
        NoRetryOnThrottling.classify_retry(&ctx)
    }

    #[test]
    fn throttling_is_never_retried_by_the_sdk_other_errors_are_left_to_it() {
        for code in THROTTLING_CODES {
            assert_eq!(classify(code), RetryAction::RetryForbidden, "{code}");
        }
        assert_eq!(classify("InternalFailure"), RetryAction::NoActionIndicated);
        assert_eq!(classify("AccessDenied"), RetryAction::NoActionIndicated);
        let ctx = InterceptorContext::new(Input::erase(()));
        assert_eq!(
            NoRetryOnThrottling.classify_retry(&ctx),
            RetryAction::NoActionIndicated
        );
    }
}
