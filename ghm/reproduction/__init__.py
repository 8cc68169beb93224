"""The paper's tables beside ours: which of its orderings and differences hold on this benchmark (``docs/reproduction.md``)."""
