"""The masked text family: TinyMDLM (and LLaDA-style models) behind the family seam."""
