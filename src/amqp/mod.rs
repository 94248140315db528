//! amqp (work in progress)
