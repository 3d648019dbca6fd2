"""Search operators behind one interface (base.py): classical ones here (classic.py); the LLM
operator lives in ``selfprune.evolution.llm``."""
