"""Reading results: the paper's figures, curve quality, comparisons, costs, rendered readings and the explorer."""
