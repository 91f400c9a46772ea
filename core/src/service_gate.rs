//! Gating of tests on external services (feature `testkit`).
//!
//! A test that needs etcd, Docker or root asks here for the service's address. Locally a missing
//! service skips the test with a printed reason; under `CAPSTAN_REQUIRE_SERVICES=1` (set by CI)
//! it fails the test instead, so CI can never pass by skipping.

/// The environment variable that turns a missing service into a failure.
pub const REQUIRE_SERVICES: &str = "CAPSTAN_REQUIRE_SERVICES";

/// Whether missing services must fail tests.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Returns the value of `var` (e.g. `CAPSTAN_ETCD_ENDPOINTS`), or `None` after printing why the
/// calling test is skipped. Panics when the variable is unset and services are required.
pub fn service_from_env(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ => {
            assert!(
                !services_required(),
                "{what} is required ({REQUIRE_SERVICES}=1) but {var} is not set"
            );
            eprintln!("SKIPPED: {what} not available ({var} is not set)");
            None
        }
    }
}

/// Reports a service that could not be reached: prints why the calling test is skipped, or
/// panics when services are required. Use as `if !available { return missing_service(…) }`.
pub fn missing_service(what: &str, why: &str) {
    assert!(
        !services_required(),
        "{what} is required ({REQUIRE_SERVICES}=1) but not available: {why}"
    );
    eprintln!("SKIPPED: {what} not available ({why})");
}
