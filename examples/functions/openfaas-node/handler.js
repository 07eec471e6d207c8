'use strict'

// Multinomial logistic regression for iris flowers. The weights were
// fitted on the 150 flowers of Fisher's iris data set and classify 97% of
// them right. Features: sepal length, sepal width, petal length and petal
// width, in cm.
const CLASSES = ['setosa', 'versicolor', 'virginica']
const WEIGHTS = [
  [-0.42, 0.967, -2.519, -1.085],
  [0.532, -0.315, -0.204, -0.943],
  [-0.112, -0.652, 2.723, 2.027]
]
const BIAS = [9.842, 2.225, -12.066]

const softmax = (scores) => {
  const top = Math.max(...scores)
  const exps = scores.map((s) => Math.exp(s - top))
  const total = exps.reduce((a, b) => a + b, 0)
  return exps.map((e) => e / total)
}

module.exports = async (event, context) => {
  const features = event.body && event.body.features
  if (!Array.isArray(features) || features.length !== 4 || !features.every(Number.isFinite)) {
    return context
      .status(400)
      .headers({ 'Content-Type': 'application/json' })
      .succeed({ error: 'expected {"features": [sepal length, sepal width, petal length, petal width]} in cm' })
  }

  const scores = WEIGHTS.map((row, k) => row.reduce((sum, w, i) => sum + w * features[i], BIAS[k]))
  const probabilities = softmax(scores)
  const best = probabilities.indexOf(Math.max(...probabilities))

  return context
    .status(200)
    .headers({ 'Content-Type': 'application/json' })
    .succeed({
      class: CLASSES[best],
      probabilities: Object.fromEntries(CLASSES.map((name, k) => [name, Number(probabilities[k].toFixed(4))]))
    })
}
