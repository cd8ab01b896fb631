"""Pyro's DMM (dmm.py next to this file) with its padded steps masked by ``poutine.mask`` instead of ``.mask()``.

The networks and the guide's RNN are dmm.py's; only the way raggedness is handled differs: each step's sample
statements run inside ``with poutine.mask(mask=...)``, as many user programs mask padding, rather than carrying
the mask on their distributions.  pyro_vae's diagnostics must leave these padded steps out just the same
(``padding_check.py --program dmm_mask``; ``model.program = "dmm_mask:DMM"``).
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine

from dmm import DMM as _PyroDMM, poly


class DMM(_PyroDMM):
    """dmm.py's DMM, each step's sites under ``poutine.mask`` (no flows: ``num_iafs = 0``)."""

    def model(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, mini_batch.size(1) + 1)):
                z_loc, z_scale = self.trans(z_prev)
                # a padded step of a shorter sequence counts for nothing: the mask of the plate's batch shape
                with poutine.mask(mask=mini_batch_mask[:, t - 1].bool()), poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample("z_%d" % t, dist.Normal(z_loc, z_scale).to_event(1))
                with poutine.mask(mask=mini_batch_mask[:, t - 1].bool()):
                    pyro.sample("obs_x_%d" % t, dist.Bernoulli(self.emitter(z_t)).to_event(1),
                                obs=mini_batch[:, t - 1, :])
                z_prev = z_t

    def guide(self, mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths, annealing_factor=1.0):
        pyro.module("dmm", self)
        h_0_contig = self.h_0.expand(1, mini_batch.size(0), self.rnn.hidden_size).contiguous()
        rnn_output, _ = self.rnn(mini_batch_reversed, h_0_contig)
        rnn_output = poly.pad_and_reverse(rnn_output, mini_batch_seq_lengths)
        z_prev = self.z_q_0.expand(mini_batch.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, mini_batch.size(1) + 1)):
                z_loc, z_scale = self.combiner(z_prev, rnn_output[:, t - 1, :])
                with poutine.mask(mask=mini_batch_mask[:, t - 1].bool()), poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample("z_%d" % t, dist.Normal(z_loc, z_scale).to_event(1))
                z_prev = z_t
