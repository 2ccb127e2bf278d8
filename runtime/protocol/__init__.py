"""Protocol adapters: each translates its wire format to the engine's typed requests and back."""
