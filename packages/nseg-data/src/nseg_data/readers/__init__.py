"""One module per form the DSB data comes in. Each yields canonical `Sample`s."""
