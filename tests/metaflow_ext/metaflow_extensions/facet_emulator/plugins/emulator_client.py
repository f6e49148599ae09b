import os


class EmulatorClientProvider:
    name = "facet-emulator"

    @staticmethod
    def get_gs_storage_client(*args, **kwargs):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        assert os.environ.get("STORAGE_EMULATOR_HOST"), "only for gcp-storage-emulator"
        return storage.Client(project="facet-test", credentials=AnonymousCredentials())

    @staticmethod
    def get_credentials(scopes, *args, **kwargs):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), "facet-test"
