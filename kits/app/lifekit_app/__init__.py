"""lifekit's generic application kit (placeholder until the kit lands)."""
