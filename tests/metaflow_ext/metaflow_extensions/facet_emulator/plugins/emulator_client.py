import os


class EmulatorClientProvider:
    name = "facet-emulator"

    @staticmethod
    def get_gs_storage_client(*args, **kwargs):
        from google.cloud import storage

        # With STORAGE_EMULATOR_HOST set, a plain client is anonymous and talks to the emulator.
        assert os.environ.get("STORAGE_EMULATOR_HOST"), "only for gcp-storage-emulator"
        return storage.Client()

    @staticmethod
    def get_credentials(scopes, *args, **kwargs):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), "facet-test"
