"""The platform's HTTP API: OpenAI-compatible routes (serving, files, fine-tuning) and native REST.

    modelmill up      # this app, its workers and the web UI (docs/platform.md)
"""
