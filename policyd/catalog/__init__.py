"""The file catalog: experiments, files, their replicas and the storage history."""
