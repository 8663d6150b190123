"""Built-in fine-tuning methods, each an ordinary plugin (see tunewright.hookspecs)."""
