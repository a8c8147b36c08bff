"""One module per backend; each is imported only when that backend is asked for."""
