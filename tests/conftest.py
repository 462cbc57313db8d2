import pytest

# helpers.py holds shared assertions (check_against_plain, gradcheck_*): give them pytest's
# detailed assertion messages too.
pytest.register_assert_rewrite("helpers")
