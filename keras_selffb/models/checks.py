"""Argument checks shared by the models."""


def check_lstm_sizes(owner, vocab_size, embedding_dim, hidden_dim, num_layers, dropout):
    """Raises a ValueError naming `owner` for sizes no LSTM model can have."""
    if vocab_size < 2 or embedding_dim < 1 or hidden_dim < 1 or num_layers < 1:
        raise ValueError(
            f"{owner} needs vocab_size >= 2 and positive embedding_dim, "
            f"hidden_dim, num_layers; got vocab_size={vocab_size}, "
            f"embedding_dim={embedding_dim}, hidden_dim={hidden_dim}, "
            f"num_layers={num_layers}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}.")
