"""Declarative, resumable simulation studies: a TOML grid in, a tidy table and plots out."""

from .builtin import figure3_result as figure3_result
from .builtin import figure3_study as figure3_study
from .grid import Cell as Cell
from .grid import cells as cells
from .plot import plot_study as plot_study
from .plot import read_table as read_table
from .run import COLUMNS as COLUMNS
from .run import run_study as run_study
from .spec import METHODS as METHODS
from .spec import Study as Study
from .spec import StudyError as StudyError
from .spec import Truth as Truth
from .spec import load_study as load_study
from .spec import parse_study as parse_study
