"""Publishing: aggregate run directories into leaderboards, render them, and gate regressions.

    from leaderboard import load_runs, render
    board = load_runs(["runs/a", "runs/b"])
    print(render(board, "md"))                      # md | csv | latex | html
    render(board, "html", output="board.html")      # a self-contained page

``erasebench compare BASE NEW`` (:mod:`leaderboard.compare`) is the regression gate.
"""

from leaderboard.aggregate import Leaderboard, load_runs, pareto_front, unsafe_flags
from leaderboard.report import FORMATS, render

__all__ = ["FORMATS", "Leaderboard", "load_runs", "pareto_front", "render", "unsafe_flags"]
