"""One file per process role, each a Ray actor that wraps core objects behind calls that do a
bounded amount of work and return typed reports (runtime/messages.py):

    experience_actor   apex: a vector env acting epsilon-greedily, inserting into the replay
    replay_server      apex: the central prioritized replay behind a rate limiter (and the calls
                       of any replay host)
    learner            apex: the learner, training from the replay (hosted in its own process by
                       default) and publishing weights
    model_parallel_rank  apex, learner.model_parallel > 1: rank r > 0 of the learner split over ranks
    ps_worker          sync_ps, async_ps: a Replica (env, local replay, learner replica) turning the
                       server's weights into updates, over the update channel (runtime/updates/)
    allreduce_rank     allreduce: a Replica that averages its gradient with the other ranks' (runtime/group.py)
    federated_client   federated: a client's Replica on its environment variant; sends only a
                       ClientMessage
"""
