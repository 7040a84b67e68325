"""OpenAI-compatible serving: one base model, many LoRA adapters in the same batch.

    modelmill serve --port 8000
"""
