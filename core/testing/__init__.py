"""Test and benchmark support (like streamlit.testing): throwaway model folders, the AppTest and
`streamlit run` drivers, synthetic BreakHis sets and small pyramidal slides. The tests and bench/
both import it; the product never does (the last layer: nothing in core imports it, see
tests/test_architecture.py)."""
