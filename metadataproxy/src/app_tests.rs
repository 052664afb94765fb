//! The daemon as `build` wires it with a fake Docker (`docker_wiring`).

#[path = "app_wiring_tests.rs"]
mod docker_wiring;
