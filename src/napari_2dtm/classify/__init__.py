"""In situ classification: template sets, scoring hits against each, the Gaussian mixture, results and their folder."""
