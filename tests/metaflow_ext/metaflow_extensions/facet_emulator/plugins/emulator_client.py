import os


class EmulatorClientProvider:
    name = "facet-emulator"

    @staticmethod
    def get_gs_storage_client(*args, **kwargs):
        from lib.storage import _storage_client  # the project's client: anonymous on the emulator

        assert os.environ.get("STORAGE_EMULATOR_HOST"), "only for gcp-storage-emulator"
        return _storage_client()

    @staticmethod
    def get_credentials(scopes, *args, **kwargs):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), "facet-test"
