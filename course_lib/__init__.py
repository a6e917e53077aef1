"""Production patterns for LLM applications, one module per pattern.

Start with `course_lib.llm.make_client()` for an OpenAI client wired to the simulated provider,
and `course_lib.retry` for the first pattern. Time comes from `course_lib.clock`.
"""

__version__ = "0.1.0"
