//! The OTLP exporter is built for every endpoint form a deployment uses:
//! plain, HTTPS, and without a scheme (HTTPS for OTLP). An HTTPS endpoint
//! used to fail the build ("no TLS feature is enabled"): the service ran
//! without traces, with one error line in its log.

#[tokio::test]
async fn the_otlp_exporter_is_built_for_plain_https_and_scheme_less_endpoints() {
    for endpoint in [
        "http://127.0.0.1:4317",
        "https://collector.example:4317",
        "collector.example:4317",
    ] {
        let built = saga_shared::telemetry::otlp_exporter(endpoint);
        assert!(built.is_ok(), "{endpoint}: {:?}", built.err());
    }
}
