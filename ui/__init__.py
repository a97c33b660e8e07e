"""The Streamlit search page. Installed as ``instructor_search.ui``."""
