"""A Metaflow extension used only by the tests: a GCP client provider for
gcp-storage-emulator, which wants anonymous credentials (Metaflow's default provider asks
google.auth for real ones). Selected with METAFLOW_DEFAULT_GCP_CLIENT_PROVIDER=facet-emulator."""

GCP_CLIENT_PROVIDERS_DESC = [("facet-emulator", ".emulator_client.EmulatorClientProvider")]
