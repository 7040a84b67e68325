"""modelmill: a self-hosted model factory.

    modelmill --help
"""

__version__ = "0.1.0"

import warnings as _warnings

# peft still reads a transformers attribute that transformers 5 deprecated; nothing for users to fix.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
