"""An actor module that exists but fails while importing (the lifecycle tests' bad deploy)."""

raise RuntimeError("this module is broken on purpose")
