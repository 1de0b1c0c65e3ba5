"""Theory and assumption checks of named components: population matrix, Hermite degree, alpha_c."""
