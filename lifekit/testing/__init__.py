"""Testing tools for kit authors and integrators: the kit conformance suite and pytest plugin."""

__all__: list[str] = []
