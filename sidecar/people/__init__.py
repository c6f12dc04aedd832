"""For the person a decision is about: reasons, recourse, the notice, contests, and the plot."""
