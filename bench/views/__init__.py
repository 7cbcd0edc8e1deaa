"""What a person looks at: qualitative figures of a run's reconstructions (read from the run directory
through :class:`bench.store.RunDir`; nothing here reaches into a method)."""
