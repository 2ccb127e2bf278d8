"""Protocol adapters: each translates its wire format to one ``GenerationRequest`` and back."""
