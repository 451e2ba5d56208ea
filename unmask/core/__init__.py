"""The engine, protocols, value types and plug-in machinery."""
