//! The IMDS HTTP API: routing, IMDSv2 tokens, IAM handlers, passthrough and mock tree.
