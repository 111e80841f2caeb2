"""The search controller: search spaces, studies, the trial objective and its runners."""

from ccsearch.search.space import SearchSpace, load_search_space
from ccsearch.search.study import StudyConfig, load_study_config

__all__ = ["SearchSpace", "StudyConfig", "load_search_space", "load_study_config"]
