"""Search operators: classical (classic.py) and LLM-driven (llm.py), behind one interface (base.py)."""
