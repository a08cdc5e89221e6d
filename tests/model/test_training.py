import numpy as np

from mnist_exp.model.training import input_pipeline, metrics_from_probs


def test_input_pipeline_yields_every_digit_once_per_epoch_reshuffled_with_the_partial_batch():
    import tensorflow as tf

    x = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1)
    y = np.eye(10, dtype=np.float32)[np.arange(50) % 10]
    epoch = tf.Variable(0, dtype=tf.int64)
    ds = input_pipeline(x, y, batch_size=16, seed=7, epoch=epoch)
    epochs = []
    for e in range(2):
        epoch.assign(e)  # as EpochOrder does at each epoch's begin
        batches = [(bx.numpy(), by.numpy()) for bx, by in ds]
        assert [len(bx) for bx, _ in batches] == [16, 16, 16, 2]  # like fit(batch_size=16): last batch kept
        order = np.concatenate([bx.ravel() for bx, _ in batches]).astype(int)
        assert sorted(order) == list(range(50))
        for bx, by in batches:  # labels travel with their images
            assert (by.argmax(axis=1) == bx.ravel().astype(int) % 10).all()
        epochs.append(list(order))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(50))
    plain = np.concatenate([bx.numpy().ravel() for bx, _ in input_pipeline(x, y, 16, shuffle=False)])
    assert list(plain.astype(int)) == list(range(50))


def test_an_epochs_order_depends_on_the_seed_and_the_epoch_only_so_a_resumed_fit_sees_the_same_digits():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    y = np.eye(10, dtype=np.float32)[np.arange(40) % 10]

    def order(seed, epoch):
        return [int(v) for bx, _ in input_pipeline(x, y, 8, seed=seed, epoch=epoch) for v in bx.numpy().ravel()]

    assert order(3, 2) == order(3, 2)  # in any process, after anything
    assert order(3, 2) != order(3, 1) and order(4, 2) != order(3, 2)


def test_metrics_from_probs_match_keras_evaluate(embedded):
    from mnist_exp.model.data import one_hot, to_model_inputs
    from mnist_exp.model.cnn import build_model

    x, labels = to_model_inputs(embedded["x_test"][:300]), embedded["y_test"][:300]
    model = build_model()
    model.fit(x, one_hot(labels), batch_size=32, epochs=1, verbose=0)
    loss, acc = model.evaluate(x, one_hot(labels), batch_size=256, verbose=0)
    got = metrics_from_probs(model.predict(x, batch_size=256, verbose=0), labels)
    assert abs(got["test_accuracy"] - acc) < 1e-6
    assert abs(got["test_loss"] - loss) < 1e-4 * max(1.0, loss)
